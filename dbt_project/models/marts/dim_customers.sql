with transactions as (

    select * from {{ ref('fct_transactions') }}

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
