{{
    config(
        incremental_strategy='delete+insert',
        partition_column=none,
        unique_key='customer_id',
    )
}}

with transactions as (

    select * from {{ ref('fct_transactions') }}
    {%- if is_incremental() %}
    -- only the customers whose rows the window (labels included) can have changed, over their whole history
    where customer_id in (
        select customer_id from {{ ref('fct_transactions') }}
        where tx_date >= {{ window_start(var('label_delay_days')) }} and tx_date < {{ window_end() }}
    )
    {%- endif %}

),

customers as (

    select
        customer_id,
        min(tx_datetime) as first_tx_at,
        max(tx_datetime) as last_tx_at,
        count(*) as tx_count,
        round(sum(tx_amount), 2) as total_amount,
        count(*) filter (where is_fraud) as fraud_tx_count
    from transactions
    group by customer_id

)

select * from customers
